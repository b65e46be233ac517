"""FARE: unsupervised adversarial fine-tuning of a CLIP vision encoder (Schlarmann et al., arXiv 2402.12336).

Offline quickstart (tiny CLIP stand-in on handwritten digits, ~2-3 min on 2 CPU cores):

    accelerate launch recipes/fare_clip.py --config recipes/configs/quickstart.yaml

Paper setting (ViT-L/14, ImageNet, ε = 4/255) on GPUs, optionally with DeepSpeed:

    accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero2.yaml \\
        recipes/fare_clip.py --config recipes/configs/fare4_vitl14_imagenet.yaml

Any flag overrides the YAML (`--epsilon 2/255 --max_steps 100`); `--resume_from_checkpoint true` continues
a killed run from its last checkpoint.
"""

from vlmrobust.recipe_main import run_clip_recipe


def main(argv=None):
    return run_clip_recipe("fare", argv)


if __name__ == "__main__":
    main()
