"""DiGraP (Huang et al., ICLR 2025, arXiv 2502.15895) and its baselines for LoRA fine-tuning of LLaVA / Qwen-VL on
VQA, evaluated in distribution and under two distribution shifts (near / far OOD).

Offline quickstart (tiny random LLaVA taught shapes-VQA on every colour and shape, then LoRA-fine-tuned on three
colours x two shapes; ID / near OOD (new colours) / far OOD (new colours and shapes)):

    python recipes/digrap_vqa.py --config recipes/configs/quickstart_digrap_vqa.yaml
    python recipes/digrap_vqa.py --config recipes/configs/quickstart_digrap_vqa.yaml --weight_space none \
        --wise_alphas 0.5                                                # vanilla LoRA, and WiSE-FT of its delta
    python recipes/digrap_vqa.py --config recipes/configs/quickstart_digrap_vqa.yaml --weight_space none \
        --lp_steps 100                                                   # LP-FT (output-head probe, then LoRA + head)
    python recipes/digrap_vqa.py --config recipes/configs/quickstart_digrap_vqa.yaml --adversarial true \
        --attack_steps 3 --attack_step_size 0.00784                      # DiGraP on PGD images (L-inf 4/255)
    python recipes/digrap_vqa.py --config recipes/configs/quickstart_digrap_vqa.yaml \
        --model_name_or_path qwen_vl:tiny                                # the tiny Qwen2-VL instead
    python recipes/digrap_vqa.py --config recipes/configs/quickstart_digrap_vqa.yaml \
        --model_name_or_path paligemma:tiny                              # the tiny PaliGemma instead

Real checkpoints (the FRAMES-VQA fine-tuning settings; shapes-VQA data until the FRAMES-VQA loaders are wired in),
on one or several GPUs (DDP, or DeepSpeed ZeRO-2: `--config_file recipes/accelerate_configs/deepspeed_zero2.yaml`):

    accelerate launch recipes/digrap_vqa.py --config recipes/configs/digrap_llava15_7b_lora.yaml
    accelerate launch recipes/digrap_vqa.py --config recipes/configs/digrap_qwen25vl_3b_lora.yaml
    accelerate launch recipes/digrap_vqa.py --config recipes/configs/digrap_paligemma3b_lora.yaml

`--weight_space` picks the method: digrap (default), none (vanilla LoRA), l2sp, ftp, spd; `--lp_steps` adds LP-FT's
probe of the output head before the LoRA stage (the head is then fine-tuned with the adapters); `--adversarial true`
trains on the training attack's images (`--attack`, `--epsilon`, `--attack_steps`). The LoRA stage is
`DiGraPVQATrainer` (method `digrap_vqa`), a `transformers.Trainer`: plain `python` is one process, `accelerate launch`
gives DDP or ZeRO-2 (ZeRO-3 is refused); every process runs the same seeded SFT stage, the main process evaluates.
`output_dir` gets the merged checkpoint (plain transformers `from_pretrained` loads it), the adapters in PEFT's layout
(`adapter/`), the unmerged trained tensors (`vlmrobust_extra.safetensors`), the weight-space state (DiGraP's ω) and
`results.json`.
"""

from vlmrobust.vlm_finetune_main import run_lvlm_digrap_recipe


def main(argv=None):
    return run_lvlm_digrap_recipe(argv)


if __name__ == "__main__":
    main()
