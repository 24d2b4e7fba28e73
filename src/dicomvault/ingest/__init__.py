"""Front doors: the DIMSE listener (C-STORE, storage commitment N-ACTION) and folder import.

What they receive goes through ``archive.write``, the one write path to a durable acknowledgement.
"""
