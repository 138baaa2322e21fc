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
    "calibrate": ".evaluate", "evaluate_localization": ".evaluate", "calibrate_localization": ".evaluate",
    "ClassHeat": ".multiscale", "class_heat": ".multiscale", "Sample": ".wsol", "heat_boxes": ".wsol",
    "max_box_acc": ".wsol",
})

__all__ = ["FCN", "ClassHeat", "ClassMaps", "Detection", "Localization", "Localizer", "Sample", "Threshold", "as_run",
           "calibrate", "cam", "class_heat", "class_maps", "component_boxes", "evaluate_localization", "evaluate_scenes",
           "heat_boxes", "max_box_acc", "grad_cam", "localize", "nms_per_class", "normalize_maps",
           "otsu_threshold", "rank_classes", "score_detections", "stream_camera", "to_fcn", "upsample"]
