"""TeCoA: supervised adversarial fine-tuning of CLIP's vision encoder against frozen text embeddings
(Mao et al., arXiv 2212.07016; the FARE authors' re-implementation).

    accelerate launch recipes/tecoa_clip.py --config recipes/configs/quickstart_tecoa.yaml
    accelerate launch recipes/tecoa_clip.py --config recipes/configs/tecoa4_vitl14_imagenet.yaml
"""

from vlmrobust.recipe_main import run_clip_recipe


def main(argv=None):
    return run_clip_recipe("tecoa", argv)


if __name__ == "__main__":
    main()
