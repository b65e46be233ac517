"""DiGraP (Huang et al., ICLR 2025, arXiv 2502.15895) and its baselines for LoRA fine-tuning of LLaVA / Qwen-VL on
VQA, evaluated in distribution and under two distribution shifts (near / far OOD).

Offline quickstart (tiny random LLaVA taught shapes-VQA on every colour and shape, then LoRA-fine-tuned on three
colours x two shapes; ID / near OOD (new colours) / far OOD (new colours and shapes)):

    python recipes/digrap_vqa.py --config recipes/configs/quickstart_digrap_vqa.yaml
    python recipes/digrap_vqa.py --config recipes/configs/quickstart_digrap_vqa.yaml --weight_space none \\
        --wise_alphas 0.5                                                # vanilla LoRA, and WiSE-FT of its delta
    python recipes/digrap_vqa.py --config recipes/configs/quickstart_digrap_vqa.yaml --weight_space none \
        --lp_steps 100                                                   # LP-FT (output-head probe, then LoRA + head)

Real checkpoints (the FRAMES-VQA fine-tuning settings; shapes-VQA data until the FRAMES-VQA loaders are wired in):

    python recipes/digrap_vqa.py --config recipes/configs/digrap_llava15_7b_lora.yaml
    python recipes/digrap_vqa.py --config recipes/configs/digrap_qwen25vl_3b_lora.yaml

`--weight_space` picks the method: digrap (default), none (vanilla LoRA), l2sp, ftp, spd; `--lp_steps` adds LP-FT's
probe of the output head before the LoRA stage (the head is then fine-tuned with the adapters and saved beside them). One process: this recipe's
loop (`finetune_vqa`) has no DDP / DeepSpeed yet.
"""

from vlmrobust.vlm_finetune_main import run_lvlm_digrap_recipe


def main(argv=None):
    return run_lvlm_digrap_recipe(argv)


if __name__ == "__main__":
    main()
