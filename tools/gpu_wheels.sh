#!/usr/bin/env bash
# The wheels a bare GPU image lacks, for an offline install there (docs/gpu_suite.md).
#
#   bash tools/gpu_wheels.sh [DEST]          # DEST defaults to wheels/ (git-ignored); talks to PyPI only
#
# The GPU machine (../shared/ENV_NOTES.md, "GPU machine") has Python 3.12, torch, lightning, torchmetrics, timm,
# transformers and safetensors, but no jsonargparse (+ docstring-parser, typeshed-client), deepspeed (+ hjson,
# pydantic, ...), datasets (+ dill, multiprocess, xxhash), av, and no network. This downloads their wheels for
# CPython 3.12 on manylinux x86_64 (pins from .ci/constraints.txt where it has them), builds deepspeed's wheel from
# its sdist (pip wheel --no-deps --no-build-isolation, which needs torch and setuptools >= 70.1 in the Python that
# runs it: the project's .venv by default), and puts a setuptools wheel in DEST/build/ for the offline editable
# install. On the device:
#
#   pip install --no-index --no-deps wheels/*.whl && pip install --no-index --find-links wheels/build --no-deps -e .
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/wheels}"
if [[ -x "$ROOT/.venv/bin/python" ]]; then DEFAULT_PYTHON="$ROOT/.venv/bin/python"; else DEFAULT_PYTHON=python3; fi
PYTHON="${PYTHON:-$DEFAULT_PYTHON}"
PY_VERSION="${PY_VERSION:-3.12}"
# glibc <= 2.28 (torch's own wheels are manylinux_2_28, so the image has at least that); pip does not widen one
# --platform to the older tags by itself, so every tag a wheel may carry is listed
PLATFORMS=(${PLATFORMS:-manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
  manylinux2014_x86_64 manylinux2010_x86_64 manylinux1_x86_64})
CONSTRAINTS="$ROOT/.ci/constraints.txt"
CARRY_LIMIT_MIB=64                               # what the device tool carries with the working tree, in all

# What the image lacks, and what those need beyond what torch / lightning / transformers already bring.
PACKAGES=(
  jsonargparse docstring-parser typeshed-client                                     # jsonargparse[signatures]
  hjson pydantic pydantic-core annotated-types typing-inspection                    # deepspeed's
  einops msgpack ninja py-cpuinfo psutil                                            #   dependencies
  datasets dill multiprocess xxhash                                                 # datasets
  av                                                                                # video decoding (PyAV)
  tokenizers                                                                        # WordPiece (Rust)
)

pin() {  # the exact version .ci/constraints.txt pins for $1 (empty when it has none)
  grep -i -E "^$1==" "$CONSTRAINTS" 2>/dev/null | head -n1 | cut -d= -f3 || true
}

mkdir -p "$DEST/build"
rm -f "$DEST"/*.whl "$DEST"/build/*.whl            # no stale versions next to the new ones

echo "== downloading ${#PACKAGES[@]} wheels for CPython $PY_VERSION, ${PLATFORMS[0]} (and older tags) into $DEST"
"$PYTHON" -m pip download --dest "$DEST" --no-deps --only-binary=:all: \
  --python-version "$PY_VERSION" --implementation cp "${PLATFORMS[@]/#/--platform=}" \
  --constraint "$CONSTRAINTS" "${PACKAGES[@]}"

DS_VERSION="$(pin deepspeed)"
echo "== building deepspeed${DS_VERSION:+==$DS_VERSION} from its sdist (pure Python; ops are JIT-built on the GPU)"
"$PYTHON" -m pip wheel --wheel-dir "$DEST" --no-deps --no-build-isolation --no-binary=deepspeed \
  "deepspeed${DS_VERSION:+==$DS_VERSION}"

echo "== setuptools for the offline editable install (pip install --no-index --find-links $DEST/build -e .)"
"$PYTHON" -m pip download --dest "$DEST/build" --no-deps --only-binary=:all: "setuptools>=70.1"

echo "== wheels"
ls -1 "$DEST"/*.whl "$DEST"/build/*.whl | sed "s|^$DEST/||"
total_bytes=$(cat "$DEST"/*.whl "$DEST"/build/*.whl | wc -c)
total_mib=$(( (total_bytes + 1048575) / 1048576 ))
echo "total: $(ls "$DEST"/*.whl "$DEST"/build/*.whl | wc -l) files, $total_bytes bytes (~$total_mib MiB)"
if (( total_mib > CARRY_LIMIT_MIB )); then
  echo "warning: over the $CARRY_LIMIT_MIB MiB that the device tool carries" >&2
fi
echo "device: pip install --no-index --no-deps wheels/*.whl && pip install --no-index --find-links wheels/build --no-deps -e ."
