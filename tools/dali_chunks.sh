#!/usr/bin/env bash
# Packs NVIDIA DALI for an offline GPU host (CUDA 13, Python 3.12; docs/benchmarks.md) into chunks small enough to
# travel one per device call, since the whole of it (≈ 160 MB packed) is over one call's 64 MiB.
#
#   bash tools/dali_chunks.sh [N=4]      # here, in the project's root, once; takes a few minutes
#
# It fetches nvidia-dali-cuda130 and the libraries it loads (nvImageCodec, nvJPEG, nvCOMP and a few small Python
# packages), keeps the extension modules of one Python (PYVER, default 3.12), strips the shared libraries, packs them
# as one tar.xz and splits that into .dali1/ … .daliN/ (git-ignored).
# Then, on a WARM device machine, one call per chunk, back to back (a machine goes back 30 s after a call; a chunk
# carried earlier stays there as long as the machine is held and no later call names it in carry):
#   call k < N:  carry [".daliK"]             command: ls -la .daliK
#   last call:   carry [".daliN", ".whl"]     command: bash tools/dali_chunks.sh --install && <your check>
# `--install` (there) joins .dali1 … .daliN, unpacks them into /tmp/dali and prints the PYTHONPATH to export; it
# fails naming any missing chunk (the machine was given back in between: start again from chunk 1).
# Seen here (CPU, 2026-11-28): 4 chunks of 39 MiB; --install unpacks 457 MB in 8 s; DALI 2.4 imports and decodes a
# JPEG. At import it prints that nvJPEG2000 and nvTIFF are missing: expected, only those formats are left out.
set -euo pipefail

if [ "${1:-}" = "--install" ]; then
  parts=$(ls -d .dali[0-9]* 2>/dev/null | sort -V)
  [ -n "$parts" ] || { echo "dali_chunks: no .daliK folder here" >&2; exit 1; }
  want=$(cat $(echo "$parts" | head -1)/count)
  for k in $(seq 1 "$want"); do
    [ -f ".dali$k/part" ] || { echo "dali_chunks: chunk $k of $want is missing (machine given back in between?)" >&2; exit 1; }
  done
  mkdir -p /tmp/dali
  for k in $(seq 1 "$want"); do cat ".dali$k/part"; done | python3 -c "
import sys, tarfile
tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/dali', filter='tar')"
  echo "dali_chunks: unpacked $want chunks into /tmp/dali; now: export PYTHONPATH=/tmp/dali:\$PYTHONPATH" >&2
  exit 0
fi

n=${1:-4}
pyver=${PYVER:-3.12}
tag=cpython-${pyver/./}
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64)
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp "${plat[@]}" \
  -d "$work/whl" nvidia-dali-cuda130==2.4.0 'nvidia-nvimgcodec-cu13>=0.9,<0.10' nvidia-libnvcomp-cu13==5.3.0.16 \
  'nvidia-nvjpeg>=13,<14' astunparse 'gast<=0.7.0' optree nvtx makefun 'libcst~=1.8'
mkdir -p "$work/site"
for w in "$work"/whl/*.whl; do (cd "$work/site" && unzip -q -o "$w"); done
# extension modules of other Pythons: DALI ships one per version
find "$work/site/nvidia/dali" -maxdepth 1 -name '*.cpython-*.so' ! -name "*.$tag-*" -delete
find "$work/site" -name '*.so*' -type f -exec strip --strip-unneeded {} + 2>/dev/null || true
tar -C "$work/site" -cf - . | xz -9 -T2 > "$work/dali.tar.xz"
size=$(stat -c %s "$work/dali.tar.xz")
chunk=$(( (size + n - 1) / n ))
rm -rf .dali[0-9]*
split -b "$chunk" -d -a 2 "$work/dali.tar.xz" "$work/part."
k=0
for f in "$work"/part.*; do
  k=$((k + 1)); mkdir -p ".dali$k"; mv "$f" ".dali$k/part"; echo "$n" > ".dali$k/count"
done
du -sh .dali[0-9]*
echo "dali_chunks: $k chunks of ≤ $((chunk / 1048576 + 1)) MiB (DALI 2.4 for CUDA 13, Python $pyver); see the header for the calls"
