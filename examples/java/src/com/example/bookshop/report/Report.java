package com.example.bookshop.report;

import java.util.ArrayList;
import java.util.List;

public final class Report {
  private final String title;
  private final List<ReportLine> lines = new ArrayList<>();
  public Report(String title) { this.title = title; }
  public void add(ReportLine line) { lines.add(line); }
  public String title() { return title; }
  public List<ReportLine> lines() { return lines; }
}
