"""The auth service: accounts, email verification, and the tokens every service trusts."""
