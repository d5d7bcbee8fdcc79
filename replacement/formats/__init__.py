"""Dictionary files: this project's own format and loaders for other tools' layouts."""
