#!/usr/bin/env bash
# Create the throwaway venv used to convert musicnn's TF1 checkpoints to ONNX.
# musicnn pins numpy<1.17 and needs TensorFlow <= 2.15, so it cannot live in the
# project's runtime environment. Usage: make_venv.sh [VENV_DIR]  (default /tmp/musicnn-venv)
set -euo pipefail
VENV="${1:-/tmp/musicnn-venv}"
PY="${PYTHON:-python3.11}"

"$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --upgrade pip
# 1. TensorFlow 2.15 (brings keras 2.15) with numpy 1.26.
$PIP install "tensorflow==2.15.0.post1" "numpy==1.26.4"
# 2. musicnn itself, without its ancient pins (numpy<1.17, tensorflow<...).
$PIP install --no-deps "musicnn==0.1.0"
# 3. tf2onnx. It upgrades numpy/protobuf/ml-dtypes, which breaks TF ...
$PIP install "tf2onnx==1.17.0"
# 4. ... so restore versions TF 2.15 works with.
$PIP install "numpy<2" "protobuf>=4.25,<5" "ml-dtypes~=0.2.0" "onnx==1.16.2"
# 5. musicnn's preprocessing (librosa) and the ONNX verifier, keeping the pins of step 4.
$PIP install "librosa==0.10.2.post1" "onnxruntime==1.19.2" \
    "numpy<2" "protobuf>=4.25,<5" "ml-dtypes~=0.2.0" "onnx==1.16.2"
# Sanity check: everything imports together.
"$VENV/bin/python" - <<'PY'
import numpy, tensorflow as tf, tf2onnx, onnx, onnxruntime, librosa, musicnn, google.protobuf
print("numpy", numpy.__version__, "| tensorflow", tf.__version__, "| tf2onnx", tf2onnx.__version__,
      "| onnx", onnx.__version__, "| onnxruntime", onnxruntime.__version__,
      "| librosa", librosa.__version__, "| protobuf", google.protobuf.__version__)
PY
echo "venv ready: $VENV"
