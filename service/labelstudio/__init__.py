"""Label Studio: the REST client, its credentials, image URLs, and label-config parsing.

HTTP and Label Studio only: nothing here imports the database or the model.
"""
