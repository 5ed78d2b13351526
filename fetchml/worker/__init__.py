"""`fetchml worker`: claims queued jobs from the daemon and runs them on this machine.

agent.py runs the slots (claims, backoff, shutdown), job.py one claimed job
(heartbeats, cancel, timeout, output tail, result), process.py the job's
process group (spawn, pid files, stopping, leftovers), output.py its
output.log and the texts cut from it, link.py the connection that comes back
after the daemon restarts, cli.py the command's options.
"""
