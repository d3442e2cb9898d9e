"""The board runtime: what runs on the RK3588 inside a board bundle (artifacts/<exp>/board/), and on a
PC with `--backend onnx`. `python3 detect.py` at the bundle's root calls detect.main.

    detect.py     the command line: the checks, the pipeline, the report, in that order
    bundle.py     bundle.json, and the checks a run makes against it before it reads a frame
    backends.py   the inference contexts: rknn-toolkit-lite2 on an NPU core, onnxruntime on a CPU thread
    pipeline.py   reader -> pre-processing -> one thread per context -> post-processing, in frame order
    source.py     an image, a folder of images or a video, as frames
    report.py     latency and throughput statistics, the summary table, files written atomically
    errors.py     the errors a user can fix, printed as one line
    yolo_core.py  letterbox, decode and NMS: the project's services/common/decode.py

A board has Python with numpy and OpenCV (and rknn-toolkit-lite2 or onnxruntime, imported when a
context loads), nothing of the project: so this package imports no other part of it, except the
shared decode through yolo_core.py. The bundle writer (services/convert/board.py) copies the package
into the bundle as runtime/, with a copy of decode.py in the place of yolo_core.py.
"""
