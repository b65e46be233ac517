"""Classic adversarial training / TRADES on a CLIP classifier, full fine-tuning or linear probing
(the protocols of arXiv 2508.14079), optionally with Epsilon-Scheduling (arXiv 2509.23325).

    accelerate launch recipes/adv_clip.py --config recipes/configs/quickstart_trades.yaml
    accelerate launch recipes/adv_clip.py --config recipes/configs/quickstart_trades.yaml --loss classic --protocol lp
    accelerate launch recipes/adv_clip.py --config recipes/configs/quickstart_trades.yaml \\
        --epsilon_schedule linear --epsilon_schedule_start 50 --epsilon_schedule_end 150
"""

from vlmrobust.recipe_main import run_clip_recipe


def main(argv=None):
    return run_clip_recipe("adversarial", argv)


if __name__ == "__main__":
    main()
