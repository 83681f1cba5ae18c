"""Several of train_tiny.py's runs in one torchrun launch, for tests/test_training.py.

python train_tiny_precision.py OUT_DIR STEPS KIND:PRECISION [KIND:PRECISION ...]

KIND as in train_tiny.py; PRECISION the estimator's ``precision``. The runs share the launch's
process group (one start-up for all); rank 0 saves each model to
``OUT_DIR/<KIND>-<PRECISION>/final.safetensors``.
"""

import os
import sys

import torch
from train_tiny import context, fit, make_model

if __name__ == "__main__":
    torch.set_num_threads(1)
    root, steps = sys.argv[1], int(sys.argv[2])
    for run in sys.argv[3:]:
        kind, precision = run.split(":")
        out = os.path.join(root, f"{kind}-{precision}")
        model = make_model(out, context(kind), steps, conditional=kind == "conditional",
                           text=kind == "text", precision=precision)
        fit(kind, model)
        if int(os.environ.get("RANK", "0")) == 0:
            model.save(os.path.join(out, "final.safetensors"))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
