"""FARE on Qwen2-VL / Qwen2.5-VL's own vision tower (Schlarmann et al., arXiv 2402.12336); the LM stays frozen.

Offline quickstart (tiny random Qwen2-VL at 112 px = 16 image tokens, taught shapes-VQA first, then FARE^8 on its
tower; ~9.5 min on 2 shared CPU cores; measured: 72.6% clean / 31.9% under APGD-20 at 8/255, with the FARE tower
70.9% / 58.4%; chance 39.5%):

    accelerate launch recipes/fare_qwen_vl.py --config recipes/configs/quickstart_qwen_vl.yaml

Images are resized to Qwen's resolution (smart_resize) before the attack; FARE matches the merger's output, the
tokens the language model reads (`--fare_target patch` matches the pre-merge patch tokens). The checkpoint loads with
plain `Qwen2VLForConditionalGeneration.from_pretrained(output_dir)`.
"""

from vlmrobust.vlm_recipe_main import run_lvlm_fare_recipe


def main(argv=None):
    return run_lvlm_fare_recipe("fare", argv)


if __name__ == "__main__":
    main()
