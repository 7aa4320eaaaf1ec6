package com.example.bookshop.report;

import com.example.bookshop.util.Strings;

public final class Formatter {
  private Formatter() {}
  public static String table(Report report) { StringBuilder out = new StringBuilder(report.title()).append('\n'); for (ReportLine line : report.lines()) { out.append(Strings.pad(line.label(), 28)).append(line.amount()).append('\n'); } return out.toString(); }
}
