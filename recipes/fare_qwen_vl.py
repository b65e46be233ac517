"""FARE on Qwen2-VL / Qwen2.5-VL's own vision tower (Schlarmann et al., arXiv 2402.12336); the LM stays frozen.

Offline quickstart (tiny random Qwen2-VL at 112 px = 16 image tokens, taught shapes-VQA first, then FARE^8 on its
tower; seed 0: 69.2% clean / 49.0% under APGD-20 at 8/255, with the FARE tower 68.8% / 59.2%, chance 39.5%, the same
for any thread count; other seeds and the 95% intervals in the README's table):

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
