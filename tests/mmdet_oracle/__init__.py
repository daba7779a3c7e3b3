"""mmdetection 3.3.0 as a test oracle for gcrepro (test-only; the library never imports this).

    mmcv_ext_standin   the four compiled mmcv ops mmdetection's GCNet models call, on torchvision.ops
    build              a ``configs/gcnet`` config -> mmdetection's own detector on CPU (SyncBN -> BN)
    images             a seeded synthetic image and mmdetection's test-time preprocessing of it
    weights            seeded, non-trivial weights (GC blocks and DCN offsets active) ...
    calibrate          ... with BN statistics, scales and biases fitted to the image under test
    checkpoint         an mmdetection checkpoint file, as mmdetection saves one
    run                mmdetection's and gcrepro's features, proposals and detections for one batch
    compare            matching and error measures between the two
    v1                 the original GCNet (v1) layout, checked by mmdetection's own upgrade tool

Importing this package installs the stand-in ``mmcv._ext`` (before anything imports ``mmcv.ops``).
"""
from mmdet_oracle import mmcv_ext_standin

mmcv_ext_standin.install()
