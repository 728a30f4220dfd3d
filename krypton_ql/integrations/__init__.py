"""krypton-ql inside other tools' workflows: ``captum`` (a drop-in for Captum's ``Occlusion``),
``segmentation`` (map-output models explained by region scores), ``datasets`` (whole folders and
Ray datasets as resumable jobs writing Parquet). The room for the coming MONAI drop-in."""
