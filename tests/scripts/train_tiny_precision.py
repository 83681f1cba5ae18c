"""train_tiny.py's run in a given precision, for the torchrun test of tests/test_training.py.

python train_tiny_precision.py OUT_DIR KIND STEPS PRECISION

KIND as in train_tiny.py; PRECISION the estimator's ``precision``. Rank 0 saves the model to
``OUT_DIR/final.safetensors``.
"""

import os
import sys

import torch
from train_tiny import context, fit, make_model

if __name__ == "__main__":
    torch.set_num_threads(1)
    out, kind, steps, precision = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    model = make_model(out, context(kind), steps, conditional=kind == "conditional",
                       precision=precision)
    fit(kind, model)
    if int(os.environ.get("RANK", "0")) == 0:
        model.save(os.path.join(out, "final.safetensors"))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
