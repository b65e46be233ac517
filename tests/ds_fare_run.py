"""Run 2 FARE steps on a tiny CLIP, optionally under DeepSpeed; print the trained weights as JSON.

Used by test_deepspeed.py in a subprocess (DeepSpeed needs its own distributed process state).
Usage: python tests/ds_fare_run.py MODEL_DIR OUT_DIR {none|path/to/ds_config.json}
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)

from conftest import TensorImageDataset  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from vlmrobust.models import create_model  # noqa: E402
from vlmrobust.trainers import FAREConfig, FARETrainer  # noqa: E402


class HookedFARE(FARETrainer):
    """Records what the gradient hook saw: one call per optimizer step, with full (gathered) gradients."""

    hook_calls = []

    def on_full_backward(self, model):
        norms = [float(g.norm()) for p in model.parameters() if (g := self.get_full_grad(p)) is not None]
        self.hook_calls.append({"step": self.state.global_step, "n_grads": len(norms), "sum_norm": sum(norms)})


def main():
    model_dir, out, ds = sys.argv[1:4]
    args = FAREConfig(output_dir=out, max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, warmup_steps=0,
                      attack_steps=2, attack_step_size=2 / 255, save_strategy="no", seed=0, use_cpu=True,
                      disable_tqdm=True, deepspeed=None if ds == "none" else ds, logging_steps=1)
    model = create_model(f"local-dir:{model_dir}")
    trainer = HookedFARE(model, args, train_dataset=TensorImageDataset())
    trainer.train()
    trainer.save_model(out)
    sd = load_file(os.path.join(out, "open_clip_model.safetensors"))
    print("RESULT " + json.dumps({"weights": {k: v.flatten().tolist() for k, v in sd.items() if k.startswith("visual.")},
                                  "hook": HookedFARE.hook_calls,
                                  "n_trainable": sum(1 for p in trainer.model.parameters() if p.requires_grad)}))


if __name__ == "__main__":
    main()
