"""The emotion stage (`stage`) and what it alone uses: the face tracker."""
