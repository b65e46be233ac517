"""A FARE run on the tiny open_clip CLIP (or a tiny LVLM's tower), or a GRACE run on a tiny LVLM (LoRA on the answer
loss), that can be SIGKILLed at a step, for tests/test_faults.py.

    python tests/fault_run.py <tiny_dir | llava:tiny | qwen_vl:tiny> <output_dir> <kill_step> <mode> <resume> [grace]

mode: `none` (run to the end), `after-save` (SIGKILL right after checkpoint `kill_step` is complete), `during-save`
(SIGKILL while checkpoint `kill_step` is being written: weights on disk, `trainer_state.json` not yet).
resume: `1` to launch with `resume_from_checkpoint=True`. `grace`: GRACE's LVLM trainer (`grace_vqa`) on shapes-VQA
items instead of FARE.
"""

import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(1)

from conftest import TensorImageDataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_callback import TrainerState  # noqa: E402

from vlmrobust.models import create_model  # noqa: E402
from vlmrobust.trainers import FAREConfig, FARETrainer  # noqa: E402

tiny, out, kill_at, mode, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
grace = sys.argv[6:7] == ["grace"]


class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if mode == "after-save" and state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


if mode == "during-save":
    _save_to_json = TrainerState.save_to_json

    def save_to_json(self, path):
        if self.global_step == kill_at and Path(path).parent.name.startswith("checkpoint-"):
            os.kill(os.getpid(), signal.SIGKILL)
        _save_to_json(self, path)

    TrainerState.save_to_json = save_to_json

common = dict(output_dir=out, max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3, warmup_steps=0,
              epsilon=4 / 255, attack_steps=2, attack_step_size=2 / 255, logging_steps=1, save_strategy="steps",
              save_steps=1, seed=0, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, report_to="none")
model = create_model(tiny if tiny.startswith(("llava:", "qwen_vl:")) else f"local-dir:{tiny}")
if grace:  # K = 2: the ranks are re-allocated after the resume from the restored curvature EMA
    from vlmrobust.data.shapes_vqa import ShapesVQA
    from vlmrobust.trainers.grace_vqa_config import GRACEVQAConfig
    from vlmrobust.trainers.grace_vqa_trainer import GRACEVQATrainer

    class Items(torch.utils.data.Dataset):
        def __init__(self):
            self.data = ShapesVQA(16, seed=0)

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            it = self.data[i]
            return {"pixel_values": model.preprocess(it["image"]), "question": it["question"],
                    "answers": it["answers"]}

    args = GRACEVQAConfig(**common, lora_r=4, awp_max_rank=2, awp_rho=0.5, curvature_interval=2)
    trainer = GRACEVQATrainer(model, args, train_dataset=Items(), callbacks=[KillAfterSave()])
else:
    args = FAREConfig(**common)
    trainer = FARETrainer(model, args, train_dataset=TensorImageDataset(size=model.image_size),
                          callbacks=[KillAfterSave()])
trainer.train(resume_from_checkpoint=True if resume else None)
trainer.save_model(out)
print(f"DONE {trainer.state.global_step}", flush=True)
