"""The model update pipeline: the twin's desired ``model`` -> a model serving in every worker.

One job per module, in the order a bundle meets them:

* ``desired``: parse and check the twin's desired document (``DesiredState``);
* ``inbox``: desired documents in, one at a time out; handled once, retried, cancelled;
* ``schedule``: the download windows;
* ``fetch``: one resumable HTTP download (ranges, retries, rate cap, disk checks);
* ``delta``: zstd patches and compressed bundles;
* ``delivery``: delta, compressed or full, inside the windows, with progress;
* ``verify``: checksums; ``signing``: Ed25519 bundle signatures; ``rollback``: the
  version high-water mark; ``trust``: whether a bundle may activate (signature, version);
* ``bundle``: safe unpacking; ``validation``: load and run the model in a child process;
  ``staging``: a verified bundle -> a validated version in the store;
* ``publish``: the manifest, the rollout, pruning, the model-ready message;
* ``rollout``: watches the workers follow the manifest; rolls back a version they refuse;
* ``status``: the one writer of the reported ``model`` object;
* ``failures``: every reason an update can fail with, named once;
* ``updater``: the thread that runs one document through all of it.
"""
