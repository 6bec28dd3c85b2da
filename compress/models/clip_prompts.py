"""Class prompts for CLIP zero-shot classification and captioned training: CLIP's CIFAR-10 templates
(openai/CLIP, data/prompts.md) and class-name synonyms.

``HELD_OUT`` templates are never used to train the offline teacher (compress.distill.clip_teacher): zero-shot
scores of the teacher use only them, so the text it is scored on is text it never saw.
"""
from __future__ import annotations

CIFAR10_TEMPLATES = (
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
    "a blurry photo of the {}.", "a black and white photo of the {}.", "a low contrast photo of the {}.",
    "a high contrast photo of the {}.", "a bad photo of the {}.", "a good photo of the {}.",
    "a photo of the small {}.", "a photo of the big {}.",
)
HELD_OUT = ("a photo of the {}.", "a blurry photo of the {}.", "a low contrast photo of the {}.",
            "a photo of the big {}.")
TRAIN_TEMPLATES = tuple(t for t in CIFAR10_TEMPLATES if t not in HELD_OUT)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# class name -> synonyms (the class name itself first when expanded by ``names``)
SYNONYMS = {
    "airplane": ("aeroplane", "plane", "airliner", "jet"),
    "automobile": ("car", "sedan", "motorcar"),
    "bird": ("small bird", "songbird", "sparrow"),
    "cat": ("kitten", "kitty", "house cat"),
    "deer": ("stag", "doe", "fawn"),
    "dog": ("puppy", "hound", "pup"),
    "frog": ("toad", "tree frog", "bullfrog"),
    "horse": ("pony", "stallion", "mare"),
    "ship": ("boat", "cargo ship", "vessel"),
    "truck": ("lorry", "pickup truck", "dump truck"),
}


def names(cls: str, synonyms: bool = True) -> tuple[str, ...]:
    """The names a class is prompted with: its own name, then its synonyms (underscores read as spaces)."""
    base = cls.replace("_", " ")
    return (base, *SYNONYMS.get(cls, ())) if synonyms else (base,)


def prompts(cls: str, templates=CIFAR10_TEMPLATES, synonyms: bool = True) -> list[str]:
    """Every template filled with every name of ``cls``."""
    return [t.format(n) for n in names(cls, synonyms) for t in templates]


__all__ = ["CIFAR10_CLASSES", "CIFAR10_TEMPLATES", "HELD_OUT", "SYNONYMS", "TRAIN_TEMPLATES", "names", "prompts"]
