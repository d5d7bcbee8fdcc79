#!/usr/bin/env bash
# Part of a claims sweep (docs/claims.md) on an accelerator lent through this workplace's
# `device` tool: a machine with PyTorch and CUDA but without transformer-lens, that reaches no
# network and keeps nothing after the session. Its results come back as one claims_sweep.json,
# which `sparse-circuits claims --out DIR --merge FILE` takes into the sweep here.
#
#   here, once:  bash tools/accelerator_claims.sh wheels
#                (into .whl/, which git is told to ignore: the packages it lacks, as wheels,
#                and this machine's token rows, rows.npz: the accelerator's Python 3.12 reads
#                another standard library, so the default corpus there is other rows)
#   there:       bash tools/accelerator_claims.sh run 'braun/e2e*' 8 520
#                (device `run` with carry [".whl"]: the shipped analysis/claims_sweep.json is
#                merged first, so finished rungs are not trained again; 8 processes share the
#                GPU for at most 520 s, each training up to 5 e2e ladders of one seed together
#                (--together 5: 40 ladders make 8 groups), on the carried rows; then the results file and the logs
#                are copied to $OUT)
#   here:        sparse-circuits claims --out DIR --merge <files_at>/claims_sweep.json
#                (refused if it was made on other rows: the sweep records their sha256)
#
# The zoo's e2e sets by its recipe (training/build_zoo.py), the same way:
#   there:       bash tools/accelerator_claims.sh zoo sae_e2e,sae_e2e_ds,skip_transcoder_e2e 8 520
#                (ladders of an earlier lease, if copied to .whl/zoo, are merged first; the
#                ladder file and each ladder's final rung come back in $OUT/zoo, no checkpoints)
#   here:        python -m training.build_zoo --runs RUNS --stage merge --transfer <files_at>/zoo
#                (and copy <files_at>/zoo to .whl/zoo before the next lease, to resume there)
#
# The working tree (about 42 MB), the wheels (2.7 MB) and the rows (6.3 MB) travel within the
# tool's 64 MiB. The accelerator's own transformers 5.17.0, huggingface_hub 1.33.0 and
# tokenizers 0.23.2 are used, not carried: with them the default model's logits were
# bit-identical to this venv's (transformers 5.25.0) on 4 x 128 tokens (checked 2026-12-05),
# and transformers 5.25 would need `kernels` as well. transformer-lens 4.3.0 runs without its
# declared beartype, fancy-einsum, typeguard and wandb (checked here by hiding them).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(transformer-lens==4.3.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)

install_wheels() {  # the packages the accelerator lacks, into a path of their own
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
}

case "${1:-}" in
  wheels)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    rm -rf .whl && mkdir .whl
    # the accelerator's python is 3.12 on x86-64
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    python3 -m training.token_rows .whl/rows.npz
    du -sh .whl
    ;;
  run)
    pattern="${2:?a --points pattern, e.g. 'braun/e2e*'}"
    workers="${3:-8}"
    seconds="${4:-520}"
    out="${OUT:?run this through the device tool, which sets OUT}"
    install_wheels
    sweep=/tmp/claims
    mkdir -p "$sweep"
    python3 sparse_circuits_cli.py claims --out "$sweep" --merge analysis/claims_sweep.json \
      > "$sweep/merge.log" 2>&1 || { cat "$sweep/merge.log"; exit 1; }
    for w in $(seq 1 "$workers"); do
      timeout "$seconds" python3 sparse_circuits_cli.py claims --out "$sweep" --claims braun \
        --points "$pattern" --device cuda --rows .whl/rows.npz --together 5 \
        > "$sweep/worker$w.log" 2>&1 &
      sleep 2  # staggered, so each takes another (point, seed)
    done
    wait || true
    cp "$sweep/claims_sweep.json" "$out/" 2>/dev/null || echo "no rung finished"
    tail -n 30 "$sweep"/worker*.log > "$out/workers.log" || true
    grep -h "tokens:" "$sweep"/worker*.log || true
    ;;
  zoo)
    sets="${2:-sae_e2e,sae_e2e_ds,skip_transcoder_e2e}"
    workers="${3:-8}"
    seconds="${4:-520}"
    out="${OUT:?run this through the device tool, which sets OUT}"
    install_wheels
    runs=/tmp/zoo
    mkdir -p "$runs"
    if [ -f .whl/zoo/zoo_ladders.json ]; then
      python3 -m training.build_zoo --runs "$runs" --stage merge --transfer .whl/zoo
    fi
    for w in $(seq 1 "$workers"); do
      timeout "$seconds" python3 -m training.build_zoo --runs "$runs" --stage train \
        --sets "$sets" --rows .whl/rows.npz --device cuda --together 2 \
        > "$runs/worker$w.log" 2>&1 &
      sleep 2  # staggered, so each takes another (set, layer)
    done
    wait || true
    python3 -m training.build_zoo --runs "$runs" --stage export --transfer "$out/zoo" \
      || echo "no rung finished"
    tail -n 30 "$runs"/worker*.log > "$out/workers.log" || true
    grep -h "tokens:" "$runs"/worker*.log || true
    ;;
  *)
    echo "usage: $0 wheels | run PATTERN [WORKERS] [SECONDS] | zoo [SETS] [WORKERS] [SECONDS]" >&2
    exit 2
    ;;
esac
