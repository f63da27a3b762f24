"""One module per pattern task; the registry in ``iclvsft_tasks.tasks.registry`` lists them."""
