#!/bin/bash
# The learning tables dcl, mochi, sdclr and translation (scripts/learning_results.py) on one CUDA GPU,
# as parts that run side by side (one per row and seed, each a process training on the GPU), then the
# GPU check (benchmarks/gpu_check.py) on the quiet GPU (CHECK_SECONDS 0 skips it); everything is packed
# into OUT/parts.tgz. TABLES="dcl mochi" picks tables (default: all four).
# Join the parts here with:  python scripts/learning_results.py TABLE --merge PARTS/TABLE_*.json
#
#   BENCH_COMMIT=<sha> OUT=<folder> [TABLES=...] bash scripts/gpu_learning_tables.sh [TABLE_SECONDS] [CHECK_SECONDS]
#
# The digit presets pin trainer.accelerator=cpu; the parts add trainer.accelerator=cuda (recorded in
# each run's command). Each part is cut at TABLE_SECONDS (default 420): a part file holds the runs
# finished by then, so a cut part loses only the run it was in.
set -u
TABLE_S=${1:-420}
CHECK_S=${2:-110}
OUT=${OUT:?set OUT to a folder for the results}
P=/tmp/parts
mkdir -p "$OUT"
mkdir -p "$P"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
$PY -c "import torch, contrastlab; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true

part() {  # part NAME TABLE ARGS...
  local name=$1 table=$2; shift 2
  timeout "$TABLE_S" $PY scripts/learning_results.py "$table" "$@" --set trainer.accelerator=cuda \
    --runs-dir /tmp/lr --out "$P/$name.json" > "$P/$name.log" 2>&1
  echo "$name: exit $? after $SECONDS s"
}
t0=$(date +%s)
for table in ${TABLES:-dcl mochi sdclr translation}; do
  case $table in
    dcl) rows=(SimCLR DCL HCL); seeds=(0 1 2) ;;
    mochi) rows=("MoCo v2" MoCHi); seeds=(0 1 2) ;;
    sdclr) rows=(SimCLR SDCLR); seeds=(0) ;;
    translation) rows=(CUT DCLGAN SimDCL); seeds=(0) ;;
    sdclr_official) rows=(SimCLR SDCLR "SDCLR p90"); seeds=(0 1 2) ;;
    *) echo "unknown table $table"; exit 2 ;;
  esac
  for r in "${rows[@]}"; do
    for s in "${seeds[@]}"; do part "${table}_${r// /}_s$s" "$table" --rows "$r" --seeds "$s" & done
  done
done
wait
echo "tables: $(( $(date +%s) - t0 )) s"
if [ "$CHECK_S" != 0 ]; then
  timeout "$CHECK_S" $PY benchmarks/gpu_check.py --rounds 15 --reps 10 --fit-steps 400 --out "$P/gpu_check.json" \
    > "$P/gpu_check.log" 2>&1
  echo "gpu_check: exit $?"
fi
tail -n 3 "$P"/*.log
tar czf "$OUT/parts.tgz" -C /tmp parts
