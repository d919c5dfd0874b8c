"""The I/O boundary: everything that reads or writes outside the process (files, S3, https,
the Hugging Face cache, the probes of a tracking server and a model registry). core/ below it
is pure."""
