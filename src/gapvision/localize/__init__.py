"""Where is each class? Exact fully-convolutional class maps, CAM/Grad-CAM, presence and boxes.

    from gapvision.localize import localize, to_fcn
    results = localize("runs/demo", ["scene.png"], out="maps/")          # JSON-ready dicts + PNGs
    fcn = to_fcn(model); maps = fcn(x)                                  # N x K x h x w logit maps, any input size
"""
from .api import Localization, Localizer, as_run, localize, stream_camera
from .boxes import Detection, Threshold, component_boxes, nms_per_class, otsu_threshold, rank_classes
from .cam import ClassMaps, cam, class_maps, grad_cam, normalize_maps, upsample
from .evaluate import calibrate, evaluate_localization, evaluate_scenes, score_detections
from .multiscale import ClassHeat, class_heat
from .wsol import Sample, heat_boxes, max_box_acc
from .fcn import FCN, to_fcn

__all__ = ["FCN", "ClassHeat", "ClassMaps", "Detection", "Localization", "Localizer", "Sample", "Threshold", "as_run",
           "calibrate", "cam", "class_heat", "class_maps", "component_boxes", "evaluate_localization", "evaluate_scenes",
           "heat_boxes", "max_box_acc", "grad_cam", "localize", "nms_per_class", "normalize_maps",
           "otsu_threshold", "rank_classes", "score_detections", "stream_camera", "to_fcn", "upsample"]
