"""FARE on LLaVA's own CLIP vision tower (Schlarmann et al., arXiv 2402.12336); the language model stays frozen.

Offline quickstart (tiny random LLaVA taught shapes-VQA first, then FARE^8 on its tower, ~3 min on 2 idle CPU cores;
seed 0: 62.5% clean / 45.4% under APGD-20 at 8/255, with the FARE tower 63.4% / 50.0%, chance 39.5%, the same for
any thread count; other seeds and the 95% intervals in the README's table):

    accelerate launch recipes/fare_llava.py --config recipes/configs/quickstart_llava.yaml

A real LLaVA-1.5 (the tower is trained at its native 336 px; `--fare_target pooled` matches CLIP's pooled output
instead of the layer -2 patch tokens the projector reads):

    accelerate launch recipes/fare_llava.py --model_name_or_path llava:llava-hf/llava-1.5-7b-hf \\
        --dataset_name vqa-json:<questions.json>,<annotations.json>,<image dir> --epsilon 4/255 --max_steps 2000

The checkpoint is written with `save_pretrained`: `LlavaForConditionalGeneration.from_pretrained(output_dir)` loads
it without vlmrobust. To put a robust CLIP trained with `recipes/fare_clip.py` into LLaVA instead, use
`create_model("llava:...").load_vision_tower("<hf-clip dir>")`.
"""

from vlmrobust.vlm_recipe_main import run_lvlm_fare_recipe


def main(argv=None):
    return run_lvlm_fare_recipe("fare", argv)


if __name__ == "__main__":
    main()
