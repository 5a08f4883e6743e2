# Step 3b: `hivetrack service` (issue 17). Installs the Event Log source and the service
# `hivetracksvc` (with `--still-held-after 10` and a JSON lines copy in .\results\), makes a
# hive unload fail as step 3 does, and looks for event 1001 naming the helper in the
# Application log (its message rendered from hivetrack-events.dll, its EventData by
# position), then 1002 once the driver looks at the hive again (`Parameters\HeldAfterSeconds`
# set to 10 for this step: the driver's own held-after event, not the service's fallback
# re-check); stops the driver and starts it again (1013/1012/1010), and uninstalls the
# service (which must remove its copies in %ProgramFiles%\hivetrack). Needs
# hivetrack-events.dll in the package.
. "$PSScriptRoot\common.ps1"
Assert-Admin
$script:Failures = 0
Assert-Verified

# The driver reads Parameters at DriverEntry: set the held-after delay, then (re)start it.
$parameters = 'HKLM:\SYSTEM\CurrentControlSet\Services\hivetrack\Parameters'
# Not `New-Item -Force` on the existing key: that recreates it empty, deleting the INF's
# Altitude (PowerShell/PowerShell#5444).
if (-not (Test-Path $parameters)) { New-Item -Path $parameters | Out-Null }
New-ItemProperty -Path $parameters -Name HeldAfterSeconds -PropertyType DWord -Value 10 -Force | Out-Null
Invoke-Native { sc.exe stop hivetrack } | Out-Null
Start-Sleep -Seconds 3
Invoke-Native { sc.exe start hivetrack } | Out-Null
Write-Result 'the message DLL is in the package' (Test-Path (Join-Path $Package 'hivetrack-events.dll')) $Package
# `service install` copies hivetrack.exe and the DLL into %ProgramFiles%\hivetrack and registers
# those (audit 21c H1: a LocalSystem service must not run from a folder others can write).
$installed = Join-Path $env:ProgramFiles 'hivetrack'
$dll = Join-Path $installed 'hivetrack-events.dll'
# A --jsonl folder that Authenticated Users can modify (what a folder under C:\ inherits) is
# refused (exit 3); one only SYSTEM and Administrators can change is accepted.
$open = Join-Path $env:SystemDrive 'hivetrack-kit-open'
New-Item -ItemType Directory -Force -Path $open | Out-Null
$refused = Invoke-Hivetrack @('service', 'install', '--jsonl', (Join-Path $open 'events.jsonl'))
Write-Result 'service install refuses a --jsonl folder non-admins can write' ($refused.Code -eq 3 -and $refused.Text -match 'refusing --jsonl') $refused.Text
Remove-Item $open -Recurse -Force -ErrorAction SilentlyContinue
$logDir = Join-Path $env:ProgramData 'hivetrack-kit-log'
New-Item -ItemType Directory -Force -Path $logDir | Out-Null
Invoke-Native { icacls $logDir /inheritance:r /grant:r '*S-1-5-18:(OI)(CI)F' '*S-1-5-32-544:(OI)(CI)F' } | Out-Null
Invoke-Native { icacls $logDir /setowner '*S-1-5-32-544' } | Out-Null
$jsonl = Join-Path $logDir 'service-events.jsonl'
Remove-Item $jsonl -ErrorAction SilentlyContinue
$since = Get-Date
$install = Invoke-Hivetrack @('service', 'install', '--still-held-after', '10', '--jsonl', $jsonl)
Write-Result 'service install' ($install.Code -eq 0) $install.Text
$svc = Get-Service hivetracksvc -ErrorAction SilentlyContinue
Write-Result 'hivetracksvc is running' ($null -ne $svc -and $svc.Status -eq 'Running') "$($svc.Status)"
$svcImage = (Get-ItemProperty 'HKLM:\SYSTEM\CurrentControlSet\Services\hivetracksvc' -ErrorAction SilentlyContinue).ImagePath
Write-Result 'the service runs the copy in Program Files' ("$svcImage" -like "*$installed\hivetrack.exe*") "$svcImage"
# The SCM keeps SERVICE_CONFIG_REQUIRED_PRIVILEGES_INFO in the service key's RequiredPrivileges
# (REG_MULTI_SZ), as Windows' own services show; not seen on a VM here.
$privs = (Get-ItemProperty 'HKLM:\SYSTEM\CurrentControlSet\Services\hivetracksvc' -ErrorAction SilentlyContinue).RequiredPrivileges
# SeRestorePrivilege: NtQueryOpenSubKeysEx refuses without it (WRK ntapi.c; review 21b, M3).
Write-Result 'the service keeps only SeDebugPrivilege, SeRestorePrivilege and SeChangeNotifyPrivilege' `
    ((@($privs) | Sort-Object) -join ',' -eq 'SeChangeNotifyPrivilege,SeDebugPrivilege,SeRestorePrivilege') "$privs"
$sourceKey = 'HKLM:\SYSTEM\CurrentControlSet\Services\EventLog\Application\hivetrack'
$source = Get-ItemProperty $sourceKey -ErrorAction SilentlyContinue
Write-Result 'event source registered' `
    ($null -ne $source -and $source.EventMessageFile -eq $dll -and $source.TypesSupported -eq 7) `
    "$($source.EventMessageFile), TypesSupported $($source.TypesSupported)"

function Get-Ours([int]$Id) {
    @(Get-WinEvent -FilterHashtable @{ LogName = 'Application'; ProviderName = 'hivetrack'; Id = $Id; StartTime = $since } -ErrorAction SilentlyContinue)
}

Start-Sleep -Seconds 3
$connected = Get-Ours 1010
Write-Result 'event 1010: connected, tracking since' ($connected.Count -ge 1) ($connected | Select-Object -First 1 | ForEach-Object Message)

# A failed unload, as in step 3.
New-TestHive 'HivetrackKitSvc' 'Software\Policies' | Out-Null
$helper = Start-Process powershell.exe -PassThru -WindowStyle Hidden -ArgumentList @(
    '-NoProfile', '-Command',
    '$k = [Microsoft.Win32.Registry]::Users.OpenSubKey("HivetrackKitSvc\Software\Policies"); Start-Sleep -Seconds 600')
Start-Sleep -Seconds 3
Invoke-Native { reg unload 'HKU\HivetrackKitSvc' } | Out-Null
Write-Result 'reg unload fails while the helper holds a key' ($LASTEXITCODE -ne 0) "exit $LASTEXITCODE"
Start-Sleep -Seconds 3

$failed = @(Get-Ours 1001 | Where-Object { $_.Properties[1].Value -like '*\HivetrackKitSvc' })
Write-Result 'event 1001 for the test hive' ($failed.Count -ge 1) ($failed | Select-Object -First 1 | ForEach-Object Message)
if ($failed.Count -ge 1) {
    $p = $failed[0].Properties.Value
    Write-Result 'EventData: Status, Holder1Pid, Holder1Image' `
        ($p[4] -eq '0xC0000121' -and $p[14] -eq "$($helper.Id)" -and $p[15] -like '*powershell.exe') `
        "status $($p[4]), pid $($p[14]), image $($p[15])"
    Write-Result 'the message is rendered from hivetrack-events.dll' `
        ($failed[0].Message -like 'The registry hive*could not be unloaded*Hive:*') $failed[0].Message
}
Start-Sleep -Seconds 15
$still = @(Get-Ours 1002 | Where-Object { $_.Properties[1].Value -like '*\HivetrackKitSvc' })
Write-Result 'event 1002: still held 10 s after the failed unload (the driver looked again)' ($still.Count -ge 1) ($still | Select-Object -First 1 | ForEach-Object Message)
Write-Result 'exactly one 1002 (the service does not re-check as well)' ($still.Count -eq 1) "$($still.Count)"
$stats = Invoke-Hivetrack @('stats', '--json')
$heldAfter = @(($stats.Text | ConvertFrom-Json).counters | Where-Object name -eq 'held_after_events')
Write-Result 'stats: held_after_events counted' ($heldAfter.Count -eq 1 -and $heldAfter[0].value -ge 1) "$($heldAfter.value)"
$lines = @(Get-Content $jsonl -ErrorAction SilentlyContinue | ForEach-Object { $_ | ConvertFrom-Json })
Write-Result 'the same events as JSON lines' (@($lines | Where-Object event_id -eq 1001).Count -ge 1) "$($lines.Count) line(s)"

Stop-Process -Id $helper.Id -Force
Start-Sleep -Seconds 2
reg unload 'HKU\HivetrackKitSvc' | Out-Null
Write-Result 'reg unload succeeds once the helper is gone' ($LASTEXITCODE -eq 0) "exit $LASTEXITCODE"

# The driver stops (the service closes its handle within 10 s) and starts again.
sc.exe stop hivetrack | Out-Null
Start-Sleep -Seconds 20
sc.exe start hivetrack | Out-Null
Start-Sleep -Seconds 20
Write-Result 'event 1013 while the driver was stopped' ((Get-Ours 1013).Count -ge 1) ''
Write-Result 'event 1012: the restart was seen' ((Get-Ours 1012).Count -ge 1) ((Get-Ours 1012) | Select-Object -First 1 | ForEach-Object Message)

Remove-ItemProperty -Path $parameters -Name HeldAfterSeconds -ErrorAction SilentlyContinue
$uninstall = Invoke-Hivetrack @('service', 'uninstall')
Write-Result 'service uninstall' ($uninstall.Code -eq 0) $uninstall.Text
Write-Result 'service and source are gone' `
    ($null -eq (Get-Service hivetracksvc -ErrorAction SilentlyContinue) -and -not (Test-Path $sourceKey)) ''
# uninstall waits (within its 30 s) for the service's process to exit after STOPPED, so its
# hivetrack.exe is no longer in use and is removed now, not at the next restart (review 21b, L7).
Write-Result 'the Program Files copies are gone' (-not (Test-Path $installed)) $installed
Copy-Item $jsonl (Join-Path $Results 'service-events.jsonl') -ErrorAction SilentlyContinue
Remove-Item $logDir -Recurse -Force -ErrorAction SilentlyContinue
Write-Host ''
Write-Host "Results in $Results ($script:Failures failure(s)). Next: .\4-uninstall.ps1"
exit $script:Failures
