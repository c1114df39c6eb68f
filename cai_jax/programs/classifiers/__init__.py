"""Constitutional classifiers: ``train_classifier`` (input, output and exchange)."""
