"""The Prefect flow that runs the nlfpipe stages, the `nlfpipe run` command and the local stack."""
