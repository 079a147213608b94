"""The products service: the catalog, with each product's stock from the inventory service."""
