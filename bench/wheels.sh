#!/usr/bin/env bash
# Wheels for the GPU machine (Python 3.12, manylinux x86-64), into .whl/ (git-ignored): what
# gigaseg and the GPU benchmark need that its image lacks. Versions as in this project's venv.
# Not carried: onnxruntime-gpu (not in this machine's package index; it bundles the CUDA and TensorRT
# providers' libraries, far over the 64 MiB a device call carries) and onnx; case 18 skips its ONNX
# rows without them.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms="$platforms --platform $p"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms -d .whl \
  rasterio==1.4.4 affine==3.0.1 cligj==0.7.2 click-plugins==1.1.1.2 \
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 \
  nibabel==5.4.2 monai==1.6.1 segmentation-models-pytorch==0.6.0 timm==1.0.31
du -sh .whl
