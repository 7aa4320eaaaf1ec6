"""Generated protobuf modules for the google.* packages the Remote Execution API uses."""
