"""The Kubernetes API: the client (kubeconfig or the pod's service account) and Kubeflow
Trainer v2 TrainJobs. Used by the kfp backend (server side) and by the train step of a job on
several nodes; it imports only `core` and `kubernetes` (an import-linter contract holds it)."""
