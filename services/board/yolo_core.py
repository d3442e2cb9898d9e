"""The letterbox, decode and NMS the simulator evaluation uses (services/common/decode.py), under the
name the board runtime imports them by. In the repository this module hands decode's over; in a
bundle the bundle writer puts a copy of decode.py itself here, so a bundle needs no other file of the
project and decodes exactly as the evaluation that measured its model."""
from services.common.decode import (LAYOUTS, check_tiles, layout_of, letterbox, letterbox_tiles, merge_tiles,
                                    postprocess, preprocess, scale_boxes, to_coco)

__all__ = ["LAYOUTS", "check_tiles", "layout_of", "letterbox", "letterbox_tiles", "merge_tiles", "postprocess",
           "preprocess", "scale_boxes", "to_coco"]
