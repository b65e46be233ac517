"""DiGraP (Huang et al., ICLR 2025, arXiv 2502.15895) and its baselines on a CLIP classifier: cross-entropy on the
zero-shot head's logits (clean, or adversarial with `--adversarial true`), full fine-tuning or LoRA (`--lora_r`).

    accelerate launch recipes/digrap_clip.py --config recipes/configs/quickstart_digrap.yaml
    accelerate launch recipes/digrap_clip.py --config recipes/configs/quickstart_digrap.yaml --weight_space l2sp
    accelerate launch recipes/digrap_clip.py --config recipes/configs/quickstart_digrap.yaml --lora_r 4
    accelerate launch recipes/digrap_clip.py --config recipes/configs/quickstart_digrap.yaml \\
        --weight_space none --train_head true --lp_steps 100                       # LP-FT
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml --num_processes 8 \\
        recipes/digrap_clip.py --config recipes/configs/digrap_vitb32_imagenet.yaml
    vlmrobust wise-ft --model local-dir:outputs/quickstart-digrap --base vlmrobust:tiny-digits-clip \\
        --alphas 0,0.25,0.5,0.75,1 --suite digits --output outputs/quickstart-digrap/wise-ft    # WiSE-FT

`--weight_space` picks the method: digrap (default), none (vanilla fine-tuning), l2sp, ftp, spd.
"""

from vlmrobust.recipe_main import run_clip_recipe


def main(argv=None):
    return run_clip_recipe("digrap", argv)


if __name__ == "__main__":
    main()
