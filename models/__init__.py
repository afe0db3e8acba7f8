"""Pure computation (floor 3): the indicator engine, features over files, model
serving, the four models, the ensemble, dataset, training, registry, and the
synthetic market. Imports only shm/ and the plan in pipeline/."""
