"""GRACE on LLaVA / Qwen-VL (arXiv 2603.27139, carried over from CLIP): LoRA on the language model and the projector,
trained on the teacher-forced answer CE of adversarial images (PGD on that loss) plus the same loss under the
layer-adaptive-rank adversarial weight perturbation and the Gram volume of the pooled projected image features of
the clean, adversarial and weight-perturbed images. The adapters are merged at the end: the checkpoint loads with
plain transformers `from_pretrained`. Evaluated as the other LVLM recipes: VQA accuracy clean and under APGD on the
answer loss.

Offline quickstarts (the tiny random LVLM taught shapes-VQA first, then GRACE; `--lambda_lar 0 --lambda_gv 0` is
the vanilla adversarial LoRA baseline; `benchmarks/grace_tables.py` runs both and prints the comparison):

    accelerate launch recipes/grace_vqa.py --config recipes/configs/quickstart_grace_llava.yaml
    accelerate launch recipes/grace_vqa.py --config recipes/configs/quickstart_grace_qwen_vl.yaml

Real models (VQAv2-style JSON files, or a Hub VQA dataset):

    accelerate launch recipes/grace_vqa.py --config recipes/configs/grace_llava15_7b_vqav2.yaml
    accelerate launch recipes/grace_vqa.py --config recipes/configs/grace_qwen25vl_vqav2.yaml
"""

from vlmrobust.vlm_recipe_main import run_lvlm_recipe


def main(argv=None):
    return run_lvlm_recipe("grace_vqa", argv)


if __name__ == "__main__":
    main()
