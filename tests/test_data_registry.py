"""Data sets are a registry (contrastlab.data.DATASETS): a new one is a module plus one line, and
the config checks data.name against the registry with a one-line, did-you-mean error."""
import sys
import textwrap

import pytest

import contrastlab.data as data
from contrastlab.config import load_config
from contrastlab.errors import ConfigError

PLUGIN = '''
"""Stripes: a toy labelled set (a test data set)."""
import torch

from contrastlab.data import TensorImageSet


def datasets(dcfg):
    def make(n):
        labels = torch.arange(n) % 2
        images = (labels[:, None, None, None] * 255 * torch.ones(n, 3, 8, 8)).to(torch.uint8)
        return TensorImageSet(images, {"label": labels}, {"label": ["dark", "light"]}, name="stripes")
    return make(dcfg.n_train), make(dcfg.n_test)
'''


def test_unknown_data_set_is_one_line_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"data.name='cifar11': unknown data set 'cifar11' \(did you mean 'cifar10'\?\)"):
        load_config("simclr", ["data.name=cifar11"])


def test_a_new_data_set_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    (tmp_path / "my_stripes.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(data.DATASETS, "stripes", "my_stripes:datasets")
    try:
        cfg = load_config("simclr", ["data.name=stripes", "data.n_train=6", "data.n_test=4", "data.long_tail_ratio=2"])
        train, test = data.build_datasets(cfg.data)
        # the shared part applied: the default label ("digit" -> the set's "label") and the long tail
        assert train.default_label == test.default_label == "label"
        assert train.labels["label"].tolist() == [0, 1, 0, 0] and len(test) == 4  # class 0 keeps 3, class 1 keeps 1
    finally:
        sys.modules.pop("my_stripes", None)


def test_every_registered_entry_is_importable():
    import importlib

    for name, target in data.DATASETS.items():
        module, fn = target.split(":")
        assert callable(getattr(importlib.import_module(module), fn)), name
