package com.example.bookshop.model;

public enum Category { FICTION, SCIENCE, HISTORY, CHILDREN }
