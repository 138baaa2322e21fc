"""Where is each class? Exact fully-convolutional class maps, CAM/Grad-CAM, presence and boxes.

    from gapvision.localize import localize, to_fcn
    results = localize("runs/demo", ["scene.png"], out="maps/")          # JSON-ready dicts + PNGs
    fcn = to_fcn(model); maps = fcn(x)                                  # N x K x h x w logit maps, any input size
"""
from .._lazy import lazy_package

# imported on first use, so that `gapvision localize --help` does not load torch
lazy_package(__name__, {
    "Localization": ".api", "Localizer": ".api", "as_run": ".api", "localize": ".api", "stream_camera": ".api",
    "Detection": ".boxes", "Threshold": ".boxes", "component_boxes": ".boxes", "nms_per_class": ".boxes",
    "otsu_threshold": ".boxes", "rank_classes": ".boxes", "ClassMaps": ".cam", "cam": ".cam", "class_maps": ".cam",
    "grad_cam": ".cam", "normalize_maps": ".cam", "upsample": ".cam", "evaluate_scenes": ".evaluate",
    "score_detections": ".evaluate", "FCN": ".fcn", "to_fcn": ".fcn",
})

__all__ = ["FCN", "ClassMaps", "Detection", "Localization", "Localizer", "Threshold", "as_run", "cam", "class_maps",
           "component_boxes", "evaluate_scenes", "grad_cam", "localize", "nms_per_class", "normalize_maps",
           "otsu_threshold", "rank_classes", "score_detections", "stream_camera", "to_fcn", "upsample"]
