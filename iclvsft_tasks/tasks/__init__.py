"""One module per pattern task; the registry in ``iclvsft_tasks.registry`` lists them."""
