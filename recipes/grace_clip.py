"""GRACE: LoRA adversarial fine-tuning of CLIP's vision tower with a curvature-adaptive low-rank weight perturbation
and Gram-volume alignment of clean / adversarial / weight-perturbed embeddings (arXiv 2603.27139). The adapters are
merged at the end: the checkpoint is a plain CLIP in the backend's layout. Evaluated as in the paper: ID (clean),
OOD (here: common corruptions) and adversarial accuracy and their harmonic mean.

    accelerate launch recipes/grace_clip.py --config recipes/configs/quickstart_grace.yaml
    accelerate launch recipes/grace_clip.py --config recipes/configs/grace_vitb32_imagenet.yaml
"""

from vlmrobust.recipe_main import run_clip_recipe


def main(argv=None):
    return run_clip_recipe("grace", argv)


if __name__ == "__main__":
    main()
