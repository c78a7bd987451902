"""``contrastlab train ...`` in a process that kills itself (SIGKILL: no clean-up) at a chosen
moment of a file write, to test that nothing is lost:

    python train_with_fault.py WHEN N -- train RECIPE key=value ...

WHEN is where the kill happens, at its N-th occurrence (1-based):
  ckpt      half-way through writing a checkpoint (the temporary file holds half its bytes)
  rewrite   half-way through an atomic rewrite of metrics.csv (resume, or new columns)
  append    while appending a row to metrics.csv: only the row's first character is written
            (a partial last line whose step field is cut short)
  replace   just before a finished temporary file is renamed over its target
  inplace   never killed, but the process exits with code 97 as soon as a file of the run
            (last.ckpt, metrics.csv, ...) is opened for writing in place instead of through a
            temporary file and a rename (appending a row to metrics.csv is allowed)
  none      never (a plain run)
"""
import os
import signal
import sys


def _die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main():
    when, n = sys.argv[1], int(sys.argv[2])
    assert sys.argv[3] == "--"
    args = sys.argv[4:]
    count = {"n": 0}

    def hit():
        count["n"] += 1
        return count["n"] == n

    import contrastlab.checkpoint as ck
    import contrastlab.engine.logging as lg
    import contrastlab.files as files
    import torch

    if when == "ckpt":
        real_save = torch.save

        def save(obj, f, *a, **k):
            if hit():
                real_save(obj, f, *a, **k)
                size = os.path.getsize(f)
                with open(f, "r+b") as fh:
                    fh.truncate(size // 2)
                _die()
            real_save(obj, f, *a, **k)

        ck.torch.save = save
    elif when == "rewrite":
        real = files.atomic_write

        def atomic_write(path, data, kept="..."):
            if str(path).endswith("metrics.csv") and hit():
                raw = data.encode() if isinstance(data, str) else data
                with files.atomic_target(path, kept) as tmp:
                    with open(tmp, "wb") as f:
                        f.write(raw[: len(raw) // 2])
                        f.flush()
                    _die()
            return real(path, data, kept)

        lg.atomic_write = atomic_write
    elif when == "append":
        real_open = open

        class _Half:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, text):
                self.f.write(text[:1])  # the first character of the step field: "1" of "15"
                self.f.flush()
                _die()

        def fake_open(file, mode="r", *a, **k):
            f = real_open(file, mode, *a, **k)
            if mode == "a" and str(file).endswith("metrics.csv") and hit():
                return _Half(f)
            return f

        lg.open = fake_open
    elif when == "replace":
        real_replace = os.replace

        def replace(src, dst):
            if hit():
                _die()
            return real_replace(src, dst)

        files.os.replace = replace
    elif when == "inplace":
        import builtins
        import io

        real_open = builtins.open
        targets = {"last.ckpt", "metrics.csv", "summary.json", "config.yaml", "eval.json", "report.html"}

        def guarded_open(file, mode="r", *a, **k):
            if isinstance(file, (str, os.PathLike)) and os.path.basename(os.fspath(file)) in targets and (
                "w" in mode or "x" in mode or "+" in mode
            ):
                sys.stderr.write(f"written in place: {file} (mode {mode})\n")
                sys.stderr.flush()
                os._exit(97)
            return real_open(file, mode, *a, **k)

        builtins.open = io.open = guarded_open
    elif when != "none":
        raise SystemExit(f"unknown fault {when}")

    from contrastlab.cli import main as cli

    sys.exit(cli(args))


if __name__ == "__main__":
    main()
