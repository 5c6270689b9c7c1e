"""The object version of the synthetic action benchmark: the same scenes (one coloured actor crossing a still textured
background among wandering grey distractors, ``vidtldr_pl.data_modules.synthetic_actions``), labelled by what the
actor looks like instead of where it goes: 8 colours x 3 shapes = 24 classes ("red circle", ..., in the retrieval
captions' words), its direction and size drawn independently of the class.

Every frame shows the class, so a model that averages its frames (ViFi-CLIP) can tell the classes apart, unlike
the directions of the action benchmark; the actor still covers only about 2-13 % of the frame. Clip i of a split
has class ``i % 24`` (balanced splits) and depends only on (seed, split, i). ``SyntheticObjectDataModule``
generates it on first use into its own folder of ``cache_dir`` and serves it as a classification DataModule.
"""
from __future__ import annotations

import numpy as np

from .synthetic import COLOURS
from .synthetic_actions import ACTION_SHAPES, Actor, ClassKind, SyntheticActionDataModule, place_actor

OBJECT_SHAPES = ACTION_SHAPES
# class names, in label order: colour-major ("red circle", "red square", "red triangle", "green circle", ...)
OBJECTS = tuple(f"{colour} {shape}" for colour in COLOURS for shape in OBJECT_SHAPES)


def sample_object(rng: np.random.Generator, name: str) -> Actor:
    """An actor of class ``name`` ("<colour> <shape>"): direction, size and path drawn from ``rng``."""
    if name not in OBJECTS:
        raise ValueError(f"unknown object class {name!r}; choose one of {list(OBJECTS)}")
    colour, shape = name.split(" ")
    return place_actor(rng, shape, colour=colour)


# a flip keeps colour and shape (the shapes are symmetric about the vertical axis)
OBJECT_KIND = ClassKind("object", "objects", OBJECTS, sample_object, stream=2, flip_changes_label=False)


class SyntheticObjectDataModule(SyntheticActionDataModule):
    """The embedded object benchmark, generated into ``cache_dir`` from the seed on first use (only the splits a
    stage reads); arguments and views as ``SyntheticActionDataModule``, class names ``OBJECTS``, and
    ``train_flip_p`` may be set (a flip keeps the class)."""

    title = "synthetic objects"
    kind = OBJECT_KIND


__all__ = ["OBJECT_KIND", "OBJECT_SHAPES", "OBJECTS", "sample_object", "SyntheticObjectDataModule"]
