"""The in-process provider: recipe -> scheduler -> engine -> pooling, loaded and warmed up here."""
