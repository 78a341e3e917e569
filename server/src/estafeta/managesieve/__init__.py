"""ManageSieve (rfc5804): users manage their Sieve scripts remotely."""
