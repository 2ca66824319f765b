"""From a trained run to use: predicting new images (``medmtl predict``) and exporting the model."""
