"""The presets a test runs over: every one, of which the README's test command runs one per
family (the cheapest that shows what its family has of its own) and ``pytest -m slow`` the
rest. CI runs both (``.ci/run``); the exhaustive half is a long run, kept out of the
command a contributor runs after each change."""

from __future__ import annotations

from typing import Any

import pytest

from necktool.spec.registry import PRESETS

#: One preset per family; test_presets_cover_every_family keeps it so as families land.
REPRESENTATIVES = {
    "scrfd_2.5g": "the README's own neck (SCRFD PAFPN, GroupNorm)",
    "retinaface_r50": "RetinaFace FPN at 840x840, no multiple of 32",
    "insightface_scrfd_500m": "mmdetection PAFPN as SCRFD's released files hold it",
    "mmdet_fpn": "mmdetection FPN, its one preset",
    "yunet": "YuNet's TFPN, its one preset",
    "yolo5face_s6": "YOLO5Face C3 PAN with a fourth level (P6, stride 64)",
    "yolov8n_face": "YOLOv8 C2f PAN",
    "yolov8_lite_t": "yolov8-lite hybrid",
}


def every_preset() -> list[Any]:
    """``pytest.param`` of every preset name, those outside :data:`REPRESENTATIVES`
    marked ``slow``."""
    return [pytest.param(name, marks=() if name in REPRESENTATIVES else pytest.mark.slow)
            for name in PRESETS]
